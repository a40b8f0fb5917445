//! The tools behind the `softdirty` binary, over the core library [`softdirty`] and the
//! trace language [`softdirty_trace`]:
//!
//! - [`run`]: the live-migration pre-copy simulator (`softdirty run`, the default job);
//! - [`compare`]: one seeded workload under every mode, side by side;
//! - [`bench`](mod@bench): marking and harvest benchmarks against vm-memory's `AtomicBitmap`;
//! - [`workload`]: the guest workloads `run` and `compare` drive;
//! - [`fuzz`]: random traces on the model and the kernel (or the reference), shrunk;
//! - [`record`]: `softdirty record`, a real program's address-space history as a trace;
//! - [`outpath`]: output paths (`-` is stdout, checked before any work);
//! - [`reference`](mod@reference): the independent reference model the fuzzer and the proptests check
//!   the model against.

pub mod bench;
pub mod compare;
pub mod fuzz;
pub mod outpath;
pub(crate) mod ranges;
pub mod record;
pub mod reference;
pub mod run;
pub mod workload;
