//! imgsyncd: keeps drop folders mirrored to the image stores of business SaaS vendors.
//!
//! The path of one file: [`watch`] sees it and waits until it is complete, [`image`] says what it
//! is, [`journal`] records it and queues the work, [`worker`] carries the work out through the
//! vendor's adapter in [`adapters`]. [`daemon`] wires them together; [`sandbox`] emulates the
//! vendors.

pub mod adapters;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod diagnose;
pub mod image;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod report;
pub mod sandbox;
pub mod service;
pub mod throttle;
pub mod watch;
pub mod worker;
