//! The trace language (`docs/trace-format.md`, the public contract): parse, lower and
//! replay against any [`softdirty::backend::Backend`].
//!
//! - [`ast`]: the parsed form;
//! - [`parse`]: text to [`ast::Trace`], with `LINE:COL` errors;
//! - [`lower`]: a command with its addresses resolved, as a [`softdirty::backend::Command`];
//! - [`render`]: a [`softdirty::backend::Command`] (or an expectation) as trace text, the
//!   one renderer every tool writes traces with;
//! - [`replay`]: runs a trace against a backend and checks its expectations.

pub mod ast;
pub mod lower;
pub mod parse;
pub mod render;
pub mod replay;
