//! `http_fetch` against real local HTTP servers: what is fetched, what is
//! refused (and that a refused request never reaches the server), redirects,
//! limits, and DNS pinning through a scripted resolver.

mod fetch;
mod limits;
mod redirects;
mod refusals;
mod support;
