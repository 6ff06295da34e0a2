//! The integration tests: one binary, modules by subject. Each test gets a fresh store in
//! a temporary directory; CLI tests run the real binary.

mod cli;
mod compat;
mod crash;
mod extract;
mod extractors;
mod golden;
mod properties;
mod query;
mod server;
mod util;
mod web;
