//! How traffic leaves: connectors that give a byte stream to a destination
//! by a deadline. Dialling (resolution, Happy Eyeballs, the loop guard) is
//! [`dial`]'s; each way out is a module. Which way a session takes is the
//! policy's decision, and what is carried over the stream the exchange's.

pub(crate) mod dial;
pub(crate) mod direct;
