//! Integration tests: the bundled Cdap model served over real HTTP on 127.0.0.1,
//! and the `cdap-authz` binary run as a process.

mod audit;
mod bad_input;
mod cli;
mod diff;
mod endpoints;
mod policy_slicing;
mod reload;
mod slice;
mod suites;
mod unix_socket;
mod util;
