//! An S3 server on loopback for bench/: the testkit's s3s-over-a-directory
//! server, as a process. Prints `endpoint=... bucket=... access_key=...
//! secret_key=... root=...` and serves until killed.

use ferryman_testkit::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};

#[tokio::main]
async fn main() {
    let server = S3Server::start().await;
    println!(
        "endpoint={} bucket={BUCKET} access_key={ACCESS_KEY} secret_key={SECRET_KEY} root={}",
        server.endpoint(),
        server.root.path().display()
    );
    std::future::pending::<()>().await;
}
