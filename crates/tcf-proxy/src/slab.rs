//! Values in reusable numbered slots: an index stays valid until its value is removed, and a
//! removed slot is reused by the next insert. Used for per-worker tables of waiting futures.

pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(value);
                index
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    /// Remove the value at `index`, if it is still there.
    pub(crate) fn remove(&mut self, index: usize) -> Option<T> {
        let value = self.slots.get_mut(index)?.take()?;
        self.free.push(index);
        Some(value)
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slots.get_mut(index)?.as_mut()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }

    /// Remove every value.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let values = self.slots.iter_mut().filter_map(Option::take).collect();
        self.free = (0..self.slots.len()).rev().collect();
        values
    }

    /// How many values it holds.
    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// How many slots were ever made (values held or not).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_removing_twice_is_harmless() {
        let mut slab = Slab::default();
        let a = slab.insert("a");
        let b = slab.insert("b");
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.len(), 1);
        assert_eq!(slab.insert("c"), a);
        assert_eq!(slab.get_mut(b), Some(&mut "b"));
        let mut all = slab.drain();
        all.sort();
        assert_eq!(all, ["b", "c"]);
        assert_eq!((slab.len(), slab.slots()), (0, 2));
        assert_eq!(slab.remove(b), None);
        assert_eq!(slab.len(), 0);
        slab.insert("d");
        slab.insert("e");
        assert_eq!(slab.slots(), 2);
    }
}
