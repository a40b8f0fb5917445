//! Modes: what "soft-dirty" means. One model, the mode is a policy.
//!
//! See `ARCHITECTURE.md` ("Modes") and the trace format's "Modes" section. The mode
//! decides three things and nothing else:
//! - whether a VMA carries the kernel's `VM_SOFTDIRTY` flag ([`Mode::uses_vma_flag`]),
//! - what state the pages of a new mapping, an mremap destination or a `DONTNEED`
//!   range start in,
//! - which `VM_SOFTDIRTY` a merged VMA takes (`Layout::merged_softdirty`) and whether the
//!   flag takes part in merge decisions.

use std::fmt;
use std::str::FromStr;

/// The soft-dirty semantics an address space follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Mode {
    /// A page is soft-dirty iff its content may have changed since the last clear.
    #[default]
    Precise,
    /// Linux up to 6.18.36: per-VMA `VM_SOFTDIRTY` ORed with per-page bits, merges ignore
    /// the flag, and an mprotect merge takes the modified VMA's flag.
    Legacy,
    /// David Hildenbrand's proposal: as `legacy`, but `VM_SOFTDIRTY` takes part in merge
    /// decisions and `clear_refs 4` merges what its clearing made compatible.
    Nomerge,
    /// The 2022 RFC: per-VMA list of non-soft-dirty regions instead of `VM_SOFTDIRTY`.
    Regions,
    /// Linux 6.19 / 6.18.37+: a merged VMA takes the OR of the flags it was made from.
    Sticky,
}

impl Mode {
    /// All modes, in the order `softdirty compare` prints them.
    pub const ALL: [Mode; 5] = [
        Mode::Precise,
        Mode::Legacy,
        Mode::Nomerge,
        Mode::Regions,
        Mode::Sticky,
    ];

    /// The mode's name in traces and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Precise => "precise",
            Mode::Legacy => "legacy",
            Mode::Nomerge => "nomerge",
            Mode::Regions => "regions",
            Mode::Sticky => "sticky",
        }
    }

    /// Does this mode keep the kernel's per-VMA `VM_SOFTDIRTY` flag?
    pub const fn uses_vma_flag(self) -> bool {
        matches!(self, Mode::Legacy | Mode::Nomerge | Mode::Sticky)
    }

    /// Does `VM_SOFTDIRTY` take part in merge decisions (two VMAs whose flags differ do
    /// not merge)?
    pub const fn flag_blocks_merge(self) -> bool {
        matches!(self, Mode::Nomerge)
    }

    /// Are the per-page bits the whole truth (no VMA-level dirtiness at all)?
    pub const fn is_precise(self) -> bool {
        matches!(self, Mode::Precise)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown mode `{s}` (expected precise, legacy, nomerge, regions or sticky)")
            })
    }
}
