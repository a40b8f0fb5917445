//! The trace language (`docs/trace-format.md`, the public contract): parse, lower and
//! replay against any [`softdirty::backend::Backend`].
//!
//! - [`ast`]: the parsed form;
//! - [`parse`]: text to [`ast::Trace`], with `LINE:COL` errors;
//! - [`lower`]: a command with its addresses resolved, structural ones as [`softdirty::backend::Op`];
//! - [`replay`]: runs a trace against the model and checks its expectations.

pub mod ast;
pub mod lower;
pub mod parse;
pub mod replay;
