//! How an artifact's bytes reach the disk and come back: data → zstd → age (optional) → file,
//! hashing both the data (content) and what is stored, so `verify --level checksums` needs no
//! identity and a restore proves the data came back bit for bit.

use crate::error::{BackupError, IoContext, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::str::FromStr;

/// zstd's default level: about pg_dump's own speed, a good ratio for SQL and RDB data.
const ZSTD_LEVEL: i32 = 3;

struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

impl<W: Write> Sealed<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

/// Parsed age recipients (`age1…`).
#[derive(Clone, Default)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    pub fn parse(list: &[String]) -> Result<Recipients> {
        list.iter()
            .map(|r| {
                age::x25519::Recipient::from_str(r.trim()).map_err(|e| {
                    BackupError::Encryption(format!(
                        "{r:?} is not an age recipient ({e})\nhint: recipients look like age1…; `age-keygen -y KEYFILE` prints one"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Recipients)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Identities able to decrypt artifacts: only needed to restore or to verify by restoring.
pub struct Identities(Vec<Box<dyn age::Identity + Send + Sync>>);

impl Identities {
    pub fn none() -> Identities {
        Identities(Vec::new())
    }

    /// An age identity file (`age-keygen -o FILE`).
    pub fn from_file(path: &Path) -> Result<Identities> {
        let file = age::IdentityFile::from_file(path.display().to_string())
            .context(|| format!("reading the age identity file {}", path.display()))?;
        let ids = file.into_identities().map_err(|e| {
            BackupError::Encryption(format!("identity file {}: {e}", path.display()))
        })?;
        Ok(Identities(ids))
    }

    /// The text of an age identity file (sent by a client for one verify or restore): kept in
    /// memory only; errors never quote it.
    pub fn from_text(text: &str) -> Result<Identities> {
        let file = age::IdentityFile::from_buffer(text.as_bytes()).map_err(|e| {
            BackupError::Encryption(format!(
                "the identity given is not an age identity file: {e}"
            ))
        })?;
        let ids = file
            .into_identities()
            .map_err(|e| BackupError::Encryption(format!("the identity given: {e}")))?;
        Ok(Identities(ids))
    }

    pub fn from_identity(identity: age::x25519::Identity) -> Identities {
        Identities(vec![Box::new(identity)])
    }
}

pub struct Sums {
    pub size: u64,
    pub sha256: String,
    pub content_size: u64,
    pub content_sha256: String,
}

type Stored = Hashing<BufWriter<File>>;

/// Writes one artifact file. Dropping it without [`ArtifactWriter::finish`] leaves a partial
/// file in the staging directory, which is never listed and is removed with it.
pub struct ArtifactWriter {
    content: Hashing<zstd::Encoder<'static, Sealed<Stored>>>,
}

impl ArtifactWriter {
    pub fn create(path: &Path, recipients: &Recipients) -> Result<ArtifactWriter> {
        let file = File::create_new(path).context(|| format!("creating {}", path.display()))?;
        let stored = Hashing::new(BufWriter::with_capacity(1 << 20, file));
        let sealed = if recipients.is_empty() {
            Sealed::Plain(stored)
        } else {
            let encryptor = age::Encryptor::with_recipients(
                recipients.0.iter().map(|r| r as &dyn age::Recipient),
            )
            .map_err(|e| BackupError::Encryption(e.to_string()))?;
            Sealed::Age(
                encryptor
                    .wrap_output(stored)
                    .context(|| format!("writing {}", path.display()))?,
            )
        };
        let encoder = zstd::Encoder::new(sealed, ZSTD_LEVEL)
            .context(|| format!("starting zstd for {}", path.display()))?;
        Ok(ArtifactWriter {
            content: Hashing::new(encoder),
        })
    }

    /// Complete the file: flush every layer and fsync it.
    pub fn finish(self) -> io::Result<Sums> {
        let Hashing {
            inner: encoder,
            hasher: content_hasher,
            count: content_size,
        } = self.content;
        let sealed = encoder.finish()?;
        let Hashing {
            inner: buffered,
            hasher,
            count,
        } = sealed.finish()?;
        let file = buffered.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(Sums {
            size: count,
            sha256: hex::encode(hasher.finalize()),
            content_size,
            content_sha256: hex::encode(content_hasher.finalize()),
        })
    }
}

impl Write for ArtifactWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.content.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.content.flush()
    }
}

/// SHA-256 and size of a file as stored.
pub fn file_sha256(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Reads an artifact's data back (decrypting and decompressing), hashing it on the way.
pub struct ContentReader {
    inner: Hashing<Box<dyn Read + Send>>,
}

impl ContentReader {
    pub fn open(path: &Path, encrypted: bool, identities: &Identities) -> Result<ContentReader> {
        let file = File::open(path).context(|| format!("opening {}", path.display()))?;
        let buffered = BufReader::with_capacity(1 << 20, file);
        let decrypted: Box<dyn Read + Send> = if encrypted {
            if identities.0.is_empty() {
                return Err(BackupError::Encryption(format!(
                    "{} is encrypted and no identity was given\nhint: pass --identity FILE (the age key whose recipient is in [backup] recipients)",
                    path.display()
                )));
            }
            let decryptor = age::Decryptor::new(buffered)
                .map_err(|e| BackupError::Encryption(format!("{}: {e}", path.display())))?;
            Box::new(
                decryptor
                    .decrypt(
                        identities
                            .0
                            .iter()
                            .map(|i| i.as_ref() as &dyn age::Identity),
                    )
                    .map_err(|e| BackupError::Encryption(format!("{}: {e}", path.display())))?,
            )
        } else {
            Box::new(buffered)
        };
        let decoder = zstd::Decoder::new(decrypted)
            .context(|| format!("starting zstd for {}", path.display()))?;
        Ok(ContentReader {
            inner: Hashing::new(Box::new(decoder)),
        })
    }

    /// Bytes read so far and their SHA-256.
    pub fn finish(self) -> (u64, String) {
        (self.inner.count, hex::encode(self.inner.hasher.finalize()))
    }

    /// Read to the end, discarding the data.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn round_trip(encrypt: bool) {
        let dir = tempfile::tempdir().unwrap();
        let identity = age::x25519::Identity::generate();
        let recipients = if encrypt {
            Recipients::parse(&[identity.to_public().to_string()]).unwrap()
        } else {
            Recipients::default()
        };
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let path = dir.path().join("a");
        let mut w = ArtifactWriter::create(&path, &recipients).unwrap();
        w.write_all(&data).unwrap();
        let sums = w.finish().unwrap();
        assert_eq!(sums.content_size, data.len() as u64);
        assert_eq!(sums.content_sha256, crate::manifest::sha256_hex(&data));
        assert_eq!(
            file_sha256(&path).unwrap(),
            (sums.size, sums.sha256.clone())
        );
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(stored.starts_with(b"age-encryption.org/v1"), encrypt);

        let ids = Identities::from_identity(
            age::x25519::Identity::from_str(identity.to_string().expose_secret()).unwrap(),
        );
        let mut r = ContentReader::open(&path, encrypt, &ids).unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(r.finish().1, sums.content_sha256);

        if encrypt {
            // The wrong key or none at all cannot read it.
            let other = Identities::from_identity(age::x25519::Identity::generate());
            assert!(ContentReader::open(&path, true, &other).is_err());
            let err = ContentReader::open(&path, true, &Identities::none())
                .err()
                .unwrap();
            assert!(err.to_string().contains("--identity"), "{err}");
        }
    }

    #[test]
    fn plain_round_trip() {
        round_trip(false);
    }

    #[test]
    fn encrypted_round_trip() {
        round_trip(true);
    }

    #[test]
    fn bad_recipient_is_refused() {
        let err = Recipients::parse(&["age1nope".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not an age recipient"), "{err}");
    }
}
