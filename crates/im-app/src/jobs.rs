//! How a durable job runs: as the route it stands for, through the service, exactly as that
//! route's HTTP request does ([`im_service::Service::respond`]), and answered with the same
//! status and bytes. The job runner holds the service; no HTTP router is involved.

use std::time::Instant;

use im_service::{Answer, Caller, Service};

/// Runs jobs through the service.
#[derive(Clone, Debug)]
pub struct ServiceRunner(pub Service);

#[async_trait::async_trait]
impl im_jobs::Runner for ServiceRunner {
    async fn run(&self, owner: &str, request: &im_jobs::Request) -> im_jobs::Answer {
        let service = &self.0;
        // As its tenant (charged to it, its quotas and figures), checked at submission: a job
        // is a unit of work its `POST /v1/jobs` paid for. Nobody waits on the connection:
        // batch work inside its group.
        let caller = Caller {
            key: None,
            tenant: im_service::TenantId::new(owner),
            request_id: service.new_request_id(),
            batch: true,
            progress: None,
        };
        let refused = |e: im_service::ServiceError| im_jobs::Answer {
            status: e.status(),
            content_type: "application/json".to_owned(),
            body: bytes::Bytes::from(e.body().to_string()),
        };
        let Some(route) = im_http_api::routes::job_routes().find(|r| r.path() == request.route)
        else {
            return refused(im_service::ServiceError::invalid(
                "route",
                "not a route a job can run",
            ));
        };
        let body = bytes::Bytes::from(request.body.to_string());
        match service.respond(route, body, &caller, Instant::now()).await {
            Ok(Answer::Body {
                status,
                content_type,
                body,
                ..
            }) => im_jobs::Answer {
                status,
                content_type: content_type.into_owned(),
                body,
            },
            Ok(Answer::Stream { .. }) => refused(im_service::ServiceError::invalid(
                "body.stream",
                "a job is not streamed; leave `stream` out and read the result",
            )),
            Err(e) => refused(e),
        }
    }
}
