//! The metric history: an embedded, append-only series store in `state_dir/metrics/`, apart from
//! the SQLite state store so that metric writes never slow the control path.
//!
//! Three tiers: raw samples (24 h by default), 1-minute rollups (14 days) and 1-hour rollups
//! (a year). Each tier is a set of segment files, one per span of time (an hour, a day, a month),
//! so retention deletes whole files. A segment is a sequence of blocks, one per collection tick
//! (or rollup step): `[u32 length][u32 crc32][payload]`. The payload holds the timestamp (delta
//! to the previous block) and the samples, each `varint(series id << 1 | is_histogram)` then the
//! value as a zigzag varint delta to the series' previous value in the same file, in thousandths.
//! That keeps a steady gauge at 2–3 bytes a sample. A block whose length or checksum does not
//! check out (a torn write) ends the file: it is cut off on reopen and never read.
//!
//! Rollups keep count/sum/min/max; latency histograms keep their merged (sparse) buckets, so
//! p50/p99 can be answered at any tier.

use crate::codec::{crc32, put_signed, put_varint, Reader};
use crate::latency::{self, Sparse};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metric store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no series {0}\nhint: `tcf-platform metrics list` shows the series collected")]
    UnknownSeries(String),
    #[error("{agg} needs a latency histogram series (metric `latency`); {series} is a plain value\nhint: use --agg avg|min|max|sum, or query METRIC `latency`")]
    QuantileOfGauge { agg: &'static str, series: String },
    #[error("the step must be at least 1s")]
    BadStep,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How long each tier keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw: Duration,
    pub minute: Duration,
    pub hour: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw: Duration::from_secs(24 * 3600),
            minute: Duration::from_secs(14 * 24 * 3600),
            hour: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// One sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Gauge(f64),
    /// Latency observations in the interval, sparse proxy buckets.
    Histogram(Sparse),
}

/// How points of a query are combined within each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    P50,
    P99,
}

impl Agg {
    pub fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "sum" => Agg::Sum,
            "count" => Agg::Count,
            "p50" => Agg::P50,
            "p99" => Agg::P99,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Sum => "sum",
            Agg::Count => "count",
            Agg::P50 => "p50",
            Agg::P99 => "p99",
        }
    }
}

/// One point of a query's answer: the start of its step and the aggregated value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub at_ms: i64,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Histogram,
}

#[derive(Debug, Clone)]
pub struct SeriesInfo {
    pub key: String,
    pub kind: Kind,
}

/// Totals for `prod monitor --action status` and the bytes-per-sample target.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    pub series: usize,
    pub bytes_on_disk: u64,
    pub raw_samples_written: u64,
    pub raw_bytes_written: u64,
}

/// A rollup of one series over one step.
#[derive(Debug, Clone, PartialEq)]
struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    hist: Option<Sparse>,
}

impl Acc {
    fn of(value: &Value) -> Acc {
        match value {
            Value::Gauge(v) => Acc {
                count: 1,
                sum: *v,
                min: *v,
                max: *v,
                hist: None,
            },
            Value::Histogram(h) => Acc {
                count: 1,
                sum: 0.0,
                min: 0.0,
                max: 0.0,
                hist: Some(h.clone()),
            },
        }
    }

    fn merge(&mut self, other: &Acc) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if let Some(h) = &other.hist {
            latency::merge(self.hist.get_or_insert_with(Vec::new), h);
        }
    }

    fn answer(&self, agg: Agg) -> Option<f64> {
        match agg {
            Agg::Avg => (self.count > 0).then(|| self.sum / self.count as f64),
            Agg::Min => Some(self.min),
            Agg::Max => Some(self.max),
            Agg::Sum => Some(self.sum),
            Agg::Count => Some(self.count as f64),
            Agg::P50 => latency::quantile_ms(self.hist.as_deref()?, 0.5),
            Agg::P99 => latency::quantile_ms(self.hist.as_deref()?, 0.99),
        }
    }
}

/// Values are stored as integers in thousandths: 0.001 resolution, exact for counters.
fn to_milli(v: f64) -> i64 {
    (v * 1000.0).round() as i64
}

fn from_milli(v: i64) -> f64 {
    v as f64 / 1000.0
}

#[derive(Debug, Clone, Copy)]
struct TierSpec {
    name: &'static str,
    /// 0 for raw samples.
    step_ms: i64,
    file_span_ms: i64,
}

const TIERS: [TierSpec; 3] = [
    TierSpec {
        name: "raw",
        step_ms: 0,
        file_span_ms: 3_600_000,
    },
    TierSpec {
        name: "1m",
        step_ms: 60_000,
        file_span_ms: 86_400_000,
    },
    TierSpec {
        name: "1h",
        step_ms: 3_600_000,
        file_span_ms: 30 * 86_400_000,
    },
];

/// A decoded block: its time and its entries.
struct Block {
    at_ms: i64,
    entries: Vec<(u32, Acc)>,
}

/// The writer of one tier's current segment, with the delta state its encoding needs.
struct Segment {
    file_no: i64,
    file: File,
    path: PathBuf,
    last_ts: i64,
    last: HashMap<(u32, u8), i64>,
}

struct Tier {
    spec: TierSpec,
    dir: PathBuf,
    retention_ms: i64,
    segment: Option<Segment>,
    /// The rollup being accumulated: its step start and the series in it.
    pending: Option<(i64, BTreeMap<u32, Acc>)>,
    /// The last step written, so a replay after restart does not write it twice.
    last_written: Option<i64>,
}

pub struct SeriesStore {
    dir: PathBuf,
    index_path: PathBuf,
    index: File,
    ids: HashMap<String, u32>,
    series: Vec<SeriesInfo>,
    tiers: Vec<Tier>,
    raw_samples_written: u64,
    raw_bytes_written: u64,
}

/// Decode a payload: delta state runs through a whole file, so `last` and `last_ts` are the
/// file's running state.
fn decode_block(
    payload: &[u8],
    rollup: bool,
    last_ts: &mut i64,
    last: &mut HashMap<(u32, u8), i64>,
) -> Option<Block> {
    let mut r = Reader::new(payload);
    let at_ms = *last_ts + r.signed()?;
    *last_ts = at_ms;
    let n = r.varint()?;
    let mut entries = Vec::with_capacity(n.min(4096) as usize);
    for _ in 0..n {
        let tag = r.varint()?;
        let id = u32::try_from(tag >> 1).ok()?;
        let is_hist = tag & 1 == 1;
        let mut field = |slot: u8, r: &mut Reader| -> Option<i64> {
            let prev = last.entry((id, slot)).or_insert(0);
            *prev += r.signed()?;
            Some(*prev)
        };
        let mut acc = if rollup {
            let count = r.varint()?;
            let sum = from_milli(field(1, &mut r)?);
            let min = from_milli(field(2, &mut r)?);
            let max = from_milli(field(3, &mut r)?);
            Acc {
                count,
                sum,
                min,
                max,
                hist: None,
            }
        } else if !is_hist {
            Acc::of(&Value::Gauge(from_milli(field(0, &mut r)?)))
        } else {
            Acc::of(&Value::Histogram(Vec::new()))
        };
        if is_hist {
            let pairs = r.varint()?;
            let mut h = Vec::with_capacity(pairs.min(256) as usize);
            let mut bucket = 0u64;
            for _ in 0..pairs {
                bucket += r.varint()?;
                h.push((bucket, r.varint()?));
            }
            acc.hist = Some(h);
        }
        entries.push((id, acc));
    }
    r.at_end().then_some(Block { at_ms, entries })
}

fn encode_block(
    at_ms: i64,
    entries: &[(u32, &Acc, bool)],
    rollup: bool,
    last_ts: &mut i64,
    last: &mut HashMap<(u32, u8), i64>,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16 + entries.len() * 4);
    put_signed(&mut payload, at_ms - *last_ts);
    *last_ts = at_ms;
    put_varint(&mut payload, entries.len() as u64);
    for (id, acc, is_hist) in entries {
        put_varint(&mut payload, (u64::from(*id) << 1) | u64::from(*is_hist));
        let mut field = |slot: u8, v: f64, out: &mut Vec<u8>| {
            let v = to_milli(v);
            let prev = last.entry((*id, slot)).or_insert(0);
            put_signed(out, v - *prev);
            *prev = v;
        };
        if rollup {
            put_varint(&mut payload, acc.count);
            field(1, acc.sum, &mut payload);
            field(2, acc.min, &mut payload);
            field(3, acc.max, &mut payload);
        } else if !is_hist {
            field(0, acc.sum, &mut payload);
        }
        if *is_hist {
            let h = acc.hist.as_deref().unwrap_or(&[]);
            put_varint(&mut payload, h.len() as u64);
            let mut prev = 0u64;
            for (bucket, count) in h {
                put_varint(&mut payload, *bucket - prev);
                prev = *bucket;
                put_varint(&mut payload, *count);
            }
        }
    }
    let mut block = Vec::with_capacity(payload.len() + 8);
    block.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    block.extend_from_slice(&crc32(&payload).to_le_bytes());
    block.extend_from_slice(&payload);
    block
}

/// Read a segment's complete blocks; returns them and the length of the valid prefix.
fn read_segment(path: &Path, rollup: bool) -> Result<(Vec<Block>, u64, SegmentState), StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let mut state = SegmentState::default();
    let mut blocks = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32(payload) != crc {
            break;
        }
        // Decode on a copy of the state: a block that does not decode must not change it.
        let mut last_ts = state.last_ts;
        let mut last = state.last.clone();
        let Some(block) = decode_block(payload, rollup, &mut last_ts, &mut last) else {
            break;
        };
        state.last_ts = last_ts;
        state.last = last;
        blocks.push(block);
        pos += 8 + len;
    }
    Ok((blocks, pos as u64, state))
}

#[derive(Default)]
struct SegmentState {
    last_ts: i64,
    last: HashMap<(u32, u8), i64>,
}

fn segment_files(dir: &Path) -> Result<Vec<(i64, PathBuf)>, StoreError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(no) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        files.push((no, entry.path()));
    }
    files.sort();
    Ok(files)
}

impl Tier {
    fn rollup(&self) -> bool {
        self.spec.step_ms > 0
    }

    /// Open (or create) the segment for `at_ms`, cutting a torn tail off an existing one.
    fn segment_for(&mut self, at_ms: i64) -> Result<&mut Segment, StoreError> {
        let file_no = at_ms.div_euclid(self.spec.file_span_ms);
        if self.segment.as_ref().is_some_and(|s| s.file_no == file_no) {
            return Ok(self.segment.as_mut().expect("checked above"));
        }
        let path = self.dir.join(format!("{file_no}.seg"));
        let state = if path.exists() {
            let (_, valid, state) = read_segment(&path, self.rollup())?;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.set_len(valid).map_err(io_err(&path))?;
            state
        } else {
            SegmentState::default()
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
        self.segment = Some(Segment {
            file_no,
            file,
            path,
            last_ts: state.last_ts,
            last: state.last,
        });
        Ok(self.segment.as_mut().expect("just set"))
    }

    fn append(&mut self, at_ms: i64, entries: &[(u32, &Acc, bool)]) -> Result<u64, StoreError> {
        let rollup = self.rollup();
        let seg = self.segment_for(at_ms)?;
        let block = encode_block(at_ms, entries, rollup, &mut seg.last_ts, &mut seg.last);
        seg.file.write_all(&block).map_err(io_err(&seg.path))?;
        Ok(block.len() as u64)
    }

    /// Blocks with `since <= at < until`, from the files that can hold them.
    fn read(&self, since: i64, until: i64) -> Result<Vec<Block>, StoreError> {
        let mut out = Vec::new();
        for (no, path) in segment_files(&self.dir)? {
            let start = no * self.spec.file_span_ms;
            if start >= until || start + self.spec.file_span_ms <= since {
                continue;
            }
            let (blocks, _, _) = read_segment(&path, self.rollup())?;
            out.extend(
                blocks
                    .into_iter()
                    .filter(|b| b.at_ms >= since && b.at_ms < until),
            );
        }
        Ok(out)
    }

    fn last_block_at(&self) -> Result<Option<i64>, StoreError> {
        for (_, path) in segment_files(&self.dir)?.iter().rev() {
            let (blocks, _, _) = read_segment(path, self.rollup())?;
            if let Some(b) = blocks.last() {
                return Ok(Some(b.at_ms));
            }
        }
        Ok(None)
    }

    fn enforce_retention(&mut self, now_ms: i64) -> Result<(), StoreError> {
        for (no, path) in segment_files(&self.dir)? {
            let end = (no + 1) * self.spec.file_span_ms;
            if end <= now_ms - self.retention_ms {
                if self.segment.as_ref().is_some_and(|s| s.file_no == no) {
                    self.segment = None;
                }
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// Add one raw sample to the rollup being built; returns a finished step to write.
    fn accumulate(&mut self, at_ms: i64, id: u32, acc: &Acc) -> Option<(i64, BTreeMap<u32, Acc>)> {
        let step = at_ms - at_ms.rem_euclid(self.spec.step_ms);
        if self.last_written.is_some_and(|w| step <= w) {
            return None;
        }
        let mut finished = None;
        if self.pending.as_ref().is_some_and(|(s, _)| *s != step) {
            finished = self.pending.take();
        }
        let (_, series) = self.pending.get_or_insert_with(|| (step, BTreeMap::new()));
        match series.get_mut(&id) {
            Some(a) => a.merge(acc),
            None => {
                series.insert(id, acc.clone());
            }
        }
        finished
    }
}

impl SeriesStore {
    /// Open the store in `dir` (created if needed): read the series index, cut torn tails, and
    /// rebuild the rollups that were in progress from the raw samples.
    pub fn open(dir: &Path, retention: Retention) -> Result<SeriesStore, StoreError> {
        let mut tiers = Vec::new();
        for spec in TIERS {
            let tier_dir = dir.join(spec.name);
            std::fs::create_dir_all(&tier_dir).map_err(io_err(&tier_dir))?;
            let retention = match spec.name {
                "raw" => retention.raw,
                "1m" => retention.minute,
                _ => retention.hour,
            };
            tiers.push(Tier {
                spec,
                dir: tier_dir,
                retention_ms: retention.as_millis() as i64,
                segment: None,
                pending: None,
                last_written: None,
            });
        }
        let index_path = dir.join("series.idx");
        let (ids, series, valid) = read_index(&index_path)?;
        let index = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index_path)
            .map_err(io_err(&index_path))?;
        index.set_len(valid).map_err(io_err(&index_path))?;
        let mut store = SeriesStore {
            dir: dir.to_path_buf(),
            index_path,
            index,
            ids,
            series,
            tiers,
            raw_samples_written: 0,
            raw_bytes_written: 0,
        };
        store.replay_rollups()?;
        Ok(store)
    }

    /// Feed the raw samples after each rollup tier's last written step back into it, so a
    /// restart loses no rollup (the step in progress is finished by the next samples).
    fn replay_rollups(&mut self) -> Result<(), StoreError> {
        for t in 1..self.tiers.len() {
            let last = self.tiers[t].last_block_at()?;
            self.tiers[t].last_written = last;
            let since = last.map_or(i64::MIN, |l| l + self.tiers[t].spec.step_ms);
            let blocks = self.tiers[0].read(since, i64::MAX)?;
            for b in blocks {
                for (id, acc) in &b.entries {
                    if let Some((step, done)) = self.tiers[t].accumulate(b.at_ms, *id, acc) {
                        self.write_rollup(t, step, &done)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn write_rollup(
        &mut self,
        tier: usize,
        step: i64,
        series: &BTreeMap<u32, Acc>,
    ) -> Result<(), StoreError> {
        let entries: Vec<(u32, &Acc, bool)> = series
            .iter()
            .map(|(id, acc)| (*id, acc, acc.hist.is_some()))
            .collect();
        self.tiers[tier].append(step, &entries)?;
        self.tiers[tier].last_written = Some(step);
        Ok(())
    }

    fn id_for(&mut self, key: &str, kind: Kind) -> Result<u32, StoreError> {
        if let Some(id) = self.ids.get(key) {
            return Ok(*id);
        }
        let id = self.series.len() as u32;
        let line = format!(
            "{id}\t{}\t{key}\n",
            if kind == Kind::Histogram { "h" } else { "g" }
        );
        self.index
            .write_all(line.as_bytes())
            .map_err(io_err(&self.index_path))?;
        self.ids.insert(key.to_string(), id);
        self.series.push(SeriesInfo {
            key: key.to_string(),
            kind,
        });
        Ok(id)
    }

    /// Append one tick's samples (all at `at_ms`) and advance the rollups.
    pub fn append(&mut self, at_ms: i64, samples: &[(String, Value)]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let mut accs = Vec::with_capacity(samples.len());
        for (key, value) in samples {
            let kind = match value {
                Value::Gauge(_) => Kind::Gauge,
                Value::Histogram(_) => Kind::Histogram,
            };
            let id = self.id_for(key, kind)?;
            accs.push((id, Acc::of(value), kind == Kind::Histogram));
        }
        // The index line of a new series reaches the file before any block that names it.
        self.index.flush().map_err(io_err(&self.index_path))?;
        let entries: Vec<(u32, &Acc, bool)> = accs.iter().map(|(i, a, h)| (*i, a, *h)).collect();
        let bytes = self.tiers[0].append(at_ms, &entries)?;
        self.raw_samples_written += samples.len() as u64;
        self.raw_bytes_written += bytes;
        for t in 1..self.tiers.len() {
            for (id, acc, _) in &accs {
                if let Some((step, done)) = self.tiers[t].accumulate(at_ms, *id, acc) {
                    self.write_rollup(t, step, &done)?;
                }
            }
        }
        Ok(())
    }

    /// Delete segment files past each tier's retention.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<(), StoreError> {
        for t in &mut self.tiers {
            t.enforce_retention(now_ms)?;
        }
        Ok(())
    }

    pub fn series(&self) -> &[SeriesInfo] {
        &self.series
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            series: self.series.len(),
            bytes_on_disk: dir_size(&self.dir),
            raw_samples_written: self.raw_samples_written,
            raw_bytes_written: self.raw_bytes_written,
        }
    }

    /// The points of `key` in `[since, until)`, one per `step` (steps aligned to the epoch, so
    /// the same query asked later gives the same points), aggregated by `agg`. Reads the
    /// coarsest tier whose step fits in `step` and whose retention still covers `since`.
    pub fn query(
        &self,
        key: &str,
        since_ms: i64,
        until_ms: i64,
        step: Duration,
        agg: Agg,
        now_ms: i64,
    ) -> Result<Vec<Point>, StoreError> {
        let step_ms = step.as_millis() as i64;
        if step_ms < 1000 {
            return Err(StoreError::BadStep);
        }
        let id = *self
            .ids
            .get(key)
            .ok_or_else(|| StoreError::UnknownSeries(key.to_string()))?;
        if matches!(agg, Agg::P50 | Agg::P99) && self.series[id as usize].kind == Kind::Gauge {
            return Err(StoreError::QuantileOfGauge {
                agg: agg.as_str(),
                series: key.to_string(),
            });
        }
        let covers = |t: &Tier| now_ms - t.retention_ms <= since_ms;
        let tier = self
            .tiers
            .iter()
            .rev()
            .find(|t| t.spec.step_ms <= step_ms && covers(t))
            .or_else(|| self.tiers.iter().find(|t| covers(t)))
            .unwrap_or(&self.tiers[self.tiers.len() - 1]);
        let mut buckets: BTreeMap<i64, Acc> = BTreeMap::new();
        for block in tier.read(since_ms, until_ms)? {
            for (bid, acc) in block.entries {
                if bid != id {
                    continue;
                }
                let at = block.at_ms - block.at_ms.rem_euclid(step_ms);
                match buckets.get_mut(&at) {
                    Some(a) => a.merge(&acc),
                    None => {
                        buckets.insert(at, acc);
                    }
                }
            }
        }
        Ok(buckets
            .into_iter()
            .filter_map(|(at_ms, acc)| acc.answer(agg).map(|value| Point { at_ms, value }))
            .collect())
    }
}

/// Index lines are `id \t g|h \t key`; a torn last line (no newline) is dropped.
/// The index read back: ids by key, series by id, and the length of the valid prefix.
type IndexRead = (HashMap<String, u32>, Vec<SeriesInfo>, u64);

fn read_index(path: &Path) -> Result<IndexRead, StoreError> {
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut ids = HashMap::new();
    let mut series = Vec::new();
    let mut valid = 0u64;
    for line in text.split_inclusive(|b| *b == b'\n') {
        let Some(body) = line.strip_suffix(b"\n") else {
            break;
        };
        let Ok(body) = std::str::from_utf8(body) else {
            break;
        };
        let mut parts = body.splitn(3, '\t');
        let (Some(id), Some(kind), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            break;
        };
        if id.parse::<usize>().ok() != Some(series.len()) {
            break;
        }
        let kind = if kind == "h" {
            Kind::Histogram
        } else {
            Kind::Gauge
        };
        ids.insert(key.to_string(), series.len() as u32);
        series.push(SeriesInfo {
            key: key.to_string(),
            kind,
        });
        valid += line.len() as u64;
    }
    Ok((ids, series, valid))
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_764_000_000_000 - 1_764_000_000_000 % HOUR;

    fn g(key: &str, v: f64) -> (String, Value) {
        (key.to_string(), Value::Gauge(v))
    }

    #[test]
    fn samples_survive_reopen_and_rollups_answer_coarse_queries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = SeriesStore::open(dir.path(), Retention::default()).unwrap();
            // Two hours of 5-second samples: requests per tick 0..=9, rss steady.
            for i in 0..(2 * 720) {
                let at = T0 + i * 5000;
                s.append(
                    at,
                    &[
                        g("gateway/requests", (i % 10) as f64),
                        g("gateway/rss_bytes", 52_428_800.0),
                        (
                            "gateway/latency".into(),
                            Value::Histogram(vec![(1200, 9), (70_000, 1)]),
                        ),
                    ],
                )
                .unwrap();
            }
        }
        let s = SeriesStore::open(dir.path(), Retention::default()).unwrap();
        let now = T0 + 2 * HOUR;
        let raw = s
            .query(
                "gateway/requests",
                T0,
                T0 + MIN,
                Duration::from_secs(5),
                Agg::Sum,
                now,
            )
            .unwrap();
        assert_eq!(raw.len(), 12);
        assert_eq!(raw[3].value, 3.0);
        // Per minute: 12 samples, sum 0+1+..+9+0+1 = 46 for the first minute.
        let per_min = s
            .query(
                "gateway/requests",
                T0,
                T0 + 2 * MIN,
                Duration::from_secs(60),
                Agg::Sum,
                now,
            )
            .unwrap();
        assert_eq!(per_min[0].value, 46.0);
        let hourly = s
            .query(
                "gateway/requests",
                T0,
                T0 + HOUR,
                Duration::from_secs(3600),
                Agg::Sum,
                now,
            )
            .unwrap();
        assert_eq!(hourly.len(), 1);
        assert_eq!(
            hourly[0].value,
            (0..720).map(|i| (i % 10) as f64).sum::<f64>()
        );
        let p99 = s
            .query(
                "gateway/latency",
                T0,
                T0 + HOUR,
                Duration::from_secs(3600),
                Agg::P99,
                now,
            )
            .unwrap();
        assert_eq!(p99[0].value, 70.0);
        let p50 = s
            .query(
                "gateway/latency",
                T0,
                T0 + HOUR,
                Duration::from_secs(60),
                Agg::P50,
                now,
            )
            .unwrap();
        assert_eq!(p50[0].value, 1.2);
        assert!(matches!(
            s.query(
                "gateway/rss_bytes",
                T0,
                now,
                Duration::from_secs(60),
                Agg::P99,
                now
            ),
            Err(StoreError::QuantileOfGauge { .. })
        ));
        assert!(matches!(
            s.query("nope/x", T0, now, Duration::from_secs(60), Agg::Avg, now),
            Err(StoreError::UnknownSeries(_))
        ));
    }

    #[test]
    fn a_steady_sample_costs_well_under_sixteen_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SeriesStore::open(dir.path(), Retention::default()).unwrap();
        for i in 0..720 {
            let samples: Vec<(String, Value)> = (0..40)
                .map(|k| g(&format!("svc{k}/cpu_percent"), 3.0 + (i % 7) as f64 * 0.1))
                .collect();
            s.append(T0 + i * 5000, &samples).unwrap();
        }
        let st = s.stats();
        let per_sample = st.raw_bytes_written as f64 / st.raw_samples_written as f64;
        assert!(per_sample <= 16.0, "{per_sample} bytes per raw sample");
        assert!(
            st.bytes_on_disk as f64 / st.raw_samples_written as f64 <= 16.0,
            "{} bytes on disk for {} samples (all tiers and the index)",
            st.bytes_on_disk,
            st.raw_samples_written
        );
    }

    #[test]
    fn a_torn_tail_is_ignored_and_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = SeriesStore::open(dir.path(), Retention::default()).unwrap();
            for i in 0..10 {
                s.append(T0 + i * 5000, &[g("a/x", i as f64)]).unwrap();
            }
        }
        let seg = dir.path().join("raw").join(format!("{}.seg", T0 / HOUR));
        let full = std::fs::metadata(&seg).unwrap().len();
        // Half a block more, as a crash mid-write leaves it; and a torn index line.
        let f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.set_len(full + 5).unwrap();
        let mut idx = OpenOptions::new()
            .append(true)
            .open(dir.path().join("series.idx"))
            .unwrap();
        idx.write_all(b"1\tg\tb/").unwrap();
        let mut s = SeriesStore::open(dir.path(), Retention::default()).unwrap();
        let pts = s
            .query(
                "a/x",
                T0,
                T0 + MIN,
                Duration::from_secs(5),
                Agg::Max,
                T0 + MIN,
            )
            .unwrap();
        assert_eq!(pts.len(), 10);
        // Writing continues after the valid prefix; deltas still decode.
        s.append(T0 + 50_000, &[g("a/x", 42.5), g("b/y", 1.0)])
            .unwrap();
        drop(s);
        let s = SeriesStore::open(dir.path(), Retention::default()).unwrap();
        let pts = s
            .query(
                "a/x",
                T0,
                T0 + MIN,
                Duration::from_secs(5),
                Agg::Max,
                T0 + MIN,
            )
            .unwrap();
        assert_eq!(pts.len(), 11);
        assert_eq!(pts[10].value, 42.5);
        assert_eq!(s.series().len(), 2);
    }

    #[test]
    fn retention_deletes_old_segments_and_a_restart_finishes_the_rollup() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            raw: Duration::from_secs(3600),
            ..Retention::default()
        };
        {
            let mut s = SeriesStore::open(dir.path(), retention).unwrap();
            for i in 0..30 {
                s.append(T0 + i * 5000, &[g("a/x", 1.0)]).unwrap();
            }
        }
        // Restarted within the same minute: the second half of minute 2 and minute 3.
        {
            let mut s = SeriesStore::open(dir.path(), retention).unwrap();
            for i in 30..60 {
                s.append(T0 + i * 5000, &[g("a/x", 1.0)]).unwrap();
            }
            let pts = s
                .query(
                    "a/x",
                    T0,
                    T0 + 5 * MIN,
                    Duration::from_secs(60),
                    Agg::Count,
                    T0 + 5 * MIN,
                )
                .unwrap();
            assert_eq!(
                pts.iter().map(|p| p.value).collect::<Vec<_>>(),
                vec![12.0, 12.0, 12.0, 12.0],
                "every finished minute counts each sample once"
            );
            s.enforce_retention(T0 + 3 * HOUR).unwrap();
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("raw")).unwrap().count(),
            0
        );
        assert_eq!(std::fs::read_dir(dir.path().join("1m")).unwrap().count(), 1);
    }
}
