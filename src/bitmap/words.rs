//! Bit and word helpers: the mask of a bit range, and iteration over the words of a page
//! range, the set bits of a word and its runs of set bits.

#[inline]
pub(super) fn word_mask(from_bit: u64, to_bit: u64) -> u64 {
    // bits [from_bit, to_bit) of a word, 0 <= from <= to <= 64 (empty when equal); the
    // shifts by 64 that `checked_sh*` turns into 0 compile to a conditional move
    debug_assert!(
        from_bit <= to_bit && to_bit <= 64,
        "word_mask({from_bit}, {to_bit})"
    );
    let below_to = (!0u64).checked_shr(64 - to_bit as u32).unwrap_or(0);
    let from_up = (!0u64).checked_shl(from_bit as u32).unwrap_or(0);
    below_to & from_up
}

/// Calls `f(word_index_in_bitmap, mask)` for every word that overlaps `[first, first+count)`.
#[inline]
pub(super) fn for_each_word(first: u64, count: u64, mut f: impl FnMut(u64, u64)) {
    let end = first + count;
    let mut p = first;
    while p < end {
        let w = p / 64;
        let lo = p % 64;
        let hi = (end - w * 64).min(64);
        f(w, word_mask(lo, hi));
        p = w * 64 + hi;
    }
}

/// Calls `f(bit)` for every set bit of `x`, lowest first.
#[inline]
pub fn for_each_bit(mut x: u64, mut f: impl FnMut(usize)) {
    while x != 0 {
        let b = x.trailing_zeros() as usize;
        f(b);
        x &= x - 1;
    }
}

/// Calls `f(start, len)` for every maximal run of set bits of `x`, lowest first.
#[inline]
pub fn for_each_run(mut x: u64, mut f: impl FnMut(u64, u64)) {
    while x != 0 {
        let s = x.trailing_zeros() as u64;
        let y = x >> s;
        let n = (!y).trailing_zeros() as u64; // y != 0, and !y has a zero at bit 0
        f(s, n);
        if s + n >= 64 {
            break;
        }
        x &= !word_mask(s, s + n);
    }
}

#[cfg(test)]
mod tests {
    use super::word_mask;

    #[test]
    fn word_mask_is_the_bit_range() {
        for from in 0..=64u64 {
            for to in from..=64u64 {
                let naive = (from..to).fold(0u64, |m, b| m | 1 << b);
                assert_eq!(word_mask(from, to), naive, "word_mask({from}, {to})");
            }
        }
    }
}
