//! What a bounded package's policy remembers of keys beyond the entries it holds: how
//! often each was asked for lately (a count-min sketch), and which were evicted lately
//! and from where (the ghosts that size the window).

/// Count-min sketch: four counters of 4 bits (at most 15) per key, all in one block of
/// a cache line (one line per access, as in Caffeine); 16 counters, 8 bytes, per
/// entry of the bound.
pub(super) struct Sketch {
    blocks: Vec<Block>,
    mask: usize,
    additions: usize,
    period: usize,
    /// Halvings so far (wrapping): a count kept elsewhere as of an older one halves once
    /// per halving since.
    epoch: u8,
}

/// Eight words of sixteen counters.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Block([u64; 8]);

impl Sketch {
    pub(super) fn new(max: usize) -> Sketch {
        let max = max.clamp(16, 1 << 26);
        let blocks = (max / 8).next_power_of_two();
        Sketch {
            blocks: vec![Block([0; 8]); blocks],
            mask: blocks - 1,
            additions: 0,
            period: max * 10,
            epoch: 0,
        }
    }

    /// The key's block, and its four counters there (word, shift). A key is the low
    /// half of its hash (what the hit buffers carry), spread over 64 bits again.
    fn slots(&self, key: u32) -> (usize, [(usize, u32); 4]) {
        let h = u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = h ^ (h >> 29);
        let block = (h >> 40) as usize & self.mask;
        // One counter in each pair of words: never the same counter twice.
        let at = |i: u32| {
            let word = i as usize * 2 + ((h >> (16 + i)) & 1) as usize;
            (word, ((h >> (i * 4)) & 15) as u32 * 4)
        };
        (block, [at(0), at(1), at(2), at(3)])
    }

    /// Counts the key; returns its estimate after (the least of its counters).
    pub(super) fn increment(&mut self, key: u32) -> u8 {
        let (block, slots) = self.slots(key);
        let words = &mut self.blocks[block].0;
        let mut added = false;
        for (word, shift) in slots {
            if (words[word] >> shift) & 15 < 15 {
                words[word] += 1 << shift;
                added = true;
            }
        }
        if added {
            self.added();
        }
        self.estimate(block, &slots)
    }

    /// One access counted elsewhere (a resident entry's own count): it brings the next
    /// halving nearer as an increment here does.
    pub(super) fn added(&mut self) {
        self.additions += 1;
        if self.additions >= self.period {
            self.age();
        }
    }

    /// Raises the key's counters to at least `count` (the count of an entry that
    /// leaves).
    pub(super) fn raise_to(&mut self, key: u32, count: u8) {
        let (block, slots) = self.slots(key);
        let words = &mut self.blocks[block].0;
        let count = u64::from(count.min(15));
        for (word, shift) in slots {
            if (words[word] >> shift) & 15 < count {
                words[word] = (words[word] & !(15 << shift)) | (count << shift);
            }
        }
    }

    /// `count`, as of halving `epoch`, halved for every halving since.
    pub(super) fn aged(&self, count: u8, epoch: u8) -> u8 {
        let since = self.epoch.wrapping_sub(epoch);
        if since >= 4 {
            0
        } else {
            count >> since
        }
    }

    pub(super) fn epoch(&self) -> u8 {
        self.epoch
    }

    /// Halves every counter: popularity fades.
    fn age(&mut self) {
        for block in &mut self.blocks {
            for word in &mut block.0 {
                *word = (*word >> 1) & 0x7777_7777_7777_7777;
            }
        }
        self.additions /= 2;
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// The key's estimate: the least of its counters.
    #[cfg(test)]
    pub(super) fn frequency(&self, key: u32) -> u8 {
        let (block, slots) = self.slots(key);
        self.estimate(block, &slots)
    }

    fn estimate(&self, block: usize, slots: &[(usize, u32); 4]) -> u8 {
        let words = &self.blocks[block].0;
        slots
            .iter()
            .map(|&(word, shift)| ((words[word] >> shift) & 15) as u8)
            .min()
            .unwrap_or(0)
    }
}

/// Where an evicted key left from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Exit {
    /// Pushed out of the window and turned away by the main space.
    Window,
    /// Evicted from the main space.
    Main,
}

/// Keys evicted lately: a lossy table of one slot per entry of the bound (a newer
/// eviction takes the slot of an older one), each the key's fingerprint, where it
/// left from, and how many departures of that kind came before it.
pub(super) struct Ghosts {
    slots: Vec<u64>,
    mask: usize,
    /// Departures so far: from the window (admitted or not), from the main space.
    departed: [u32; 2],
    /// Whether a key was remembered yet: until the bound is first reached, none is,
    /// and an insert need not look.
    any: bool,
}

const EXIT_BIT: u64 = 1 << 31;
const COUNT_MASK: u32 = (1 << 31) - 1;

impl Ghosts {
    pub(super) fn new(max: usize) -> Ghosts {
        let n = max.clamp(16, 1 << 24).next_power_of_two();
        Ghosts {
            slots: vec![0; n],
            mask: n - 1,
            departed: [0; 2],
            any: false,
        }
    }

    /// One more entry left the window (`Exit::Window`) or the main space.
    pub(super) fn depart(&mut self, exit: Exit) {
        let n = &mut self.departed[exit as usize];
        *n = n.wrapping_add(1);
    }

    /// Remembers that the key of `hash` was evicted, from `exit`.
    pub(super) fn remember(&mut self, hash: u64, exit: Exit) {
        let count = self.departed[exit as usize] & COUNT_MASK;
        let kind = if exit == Exit::Main { EXIT_BIT } else { 0 };
        let at = self.slot(hash);
        self.slots[at] = (hash & !0xFFFF_FFFF) | kind | u64::from(count);
        self.any = true;
    }

    /// Whether the key of `hash` (asked for again) was evicted lately: where from, and
    /// how many departures of that kind ago. Forgets it.
    pub(super) fn returned(&mut self, hash: u64) -> Option<(Exit, u32)> {
        if !self.any {
            return None;
        }
        let at = self.slot(hash);
        let ghost = self.slots[at];
        if ghost == 0 || (ghost ^ hash) >> 32 != 0 {
            return None;
        }
        self.slots[at] = 0;
        let exit = if ghost & EXIT_BIT == 0 {
            Exit::Window
        } else {
            Exit::Main
        };
        let ago = self.departed[exit as usize].wrapping_sub(ghost as u32) & COUNT_MASK;
        Some((exit, ago))
    }

    fn slot(&self, hash: u64) -> usize {
        (hash >> 1) as usize & self.mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_kept_in_a_node_ages_with_the_sketch_and_returns_to_it() {
        let mut s = Sketch::new(64);
        let epoch = s.epoch();
        s.raise_to(7, 12);
        assert_eq!(s.frequency(7), 12);
        s.raise_to(7, 3); // never lowered
        assert_eq!(s.frequency(7), 12);
        s.age();
        assert_eq!((s.aged(12, epoch), s.frequency(7)), (6, 6));
        for _ in 0..3 {
            s.age();
        }
        assert_eq!(s.aged(12, epoch), 0);
    }

    #[test]
    fn a_ghost_says_where_it_left_from_and_how_long_ago_once() {
        let mut g = Ghosts::new(64);
        let (a, b) = (0xABCD_0000_0000_0003_u64, 0x1234_0000_0000_0005_u64);
        g.depart(Exit::Window);
        g.remember(a, Exit::Window);
        g.depart(Exit::Main);
        g.remember(b, Exit::Main);
        for _ in 0..5 {
            g.depart(Exit::Window);
        }
        assert_eq!(g.returned(a), Some((Exit::Window, 5)));
        assert_eq!(g.returned(a), None);
        assert_eq!(g.returned(b), Some((Exit::Main, 0)));
        // Another key of the same slot is not taken for it.
        g.remember(a, Exit::Window);
        assert_eq!(g.returned(a ^ (1 << 40)), None);
    }
}
