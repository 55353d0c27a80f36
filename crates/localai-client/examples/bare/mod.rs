//! What the bare examples share: hyper's HTTP/1 server on im's runtime (tokio's current-thread scheduler),
//! each connection served by `handle`, and nothing else, with im-http's allocator (jemalloc, built
//! with the workspace's `JEMALLOC_SYS_WITH_MALLOC_CONF`), so a floor differs from im-http only in
//! what im does.

use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Serve `handle` on `listen` until the process ends.
pub fn serve<H, F>(listen: &str, handle: H) -> Result<(), Box<dyn std::error::Error>>
where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, std::convert::Infallible>> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
        }
    })
}
