//! The integration tests: one binary, modules by subject. Each test gets a fresh store in
//! a temporary directory; CLI tests run the real binary.

mod cards;
mod cli;
mod compat;
mod concurrency;
mod contract;
mod crash;
mod decoders;
mod extract;
mod extractors;
mod golden;
mod layers;
mod properties;
mod query;
mod reliability;
mod s3;
mod server;
mod shared;
mod sources;
mod util;
mod web;

/// Every allocation of this binary goes through the tracking allocator, so the decoder
/// tests can measure what a mutated input makes a decoder ask for.
#[global_allocator]
static ALLOC: decoders::Tracking = decoders::Tracking;
