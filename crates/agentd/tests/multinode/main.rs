//! Several real `agentd serve` processes on one PostgreSQL database
//! (DESIGN §4): runs are claimed once across nodes, events fan out across
//! nodes, a killed node's runs finish elsewhere, and a PostgreSQL restart
//! mid-run is survived. Needs PostgreSQL (127.0.0.1:5432, database `test`,
//! or `AGENTD_TEST_DATABASE_URL`), which `.ci/run` keeps up; each test works
//! in a schema of its own.

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

mod nodes;
mod restart;
