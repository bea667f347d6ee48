//! Every row of CONTRACT §4 against the router on PostgreSQL and Redis, in-process.

mod common;

use common::{PgDb, Server, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_contract_says_on_postgres_and_redis() {
    let db = PgDb::create();
    let s = Server::start(&Settings::postgres(&db)).await;
    common::routes::walk_every_route(&s).await;
}
