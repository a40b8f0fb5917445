//! The trace language (`../shared/spec/trace-format.md`): parse and replay.
//!
//! - [`ast`]: the parsed form;
//! - [`parse`]: text to [`ast::Trace`], with `LINE:COL` errors;
//! - [`lower`]: a command with its addresses resolved, structural ones as [`crate::backend::Op`];
//! - [`replay`]: runs a trace against the model and checks its expectations.

pub mod ast;
pub mod lower;
pub mod parse;
pub mod replay;
