//! Every metric name im exports. These names are part of im's interface (documented in the
//! README, queried by the Grafana dashboard in `deploy/`, checked by `cargo xtask deploy-check`).

/// `im_requests_total{kind,model,outcome}`: requests that left, by outcome.
pub const REQUESTS_TOTAL: &str = "im_requests_total";
/// `im_queue_depth{kind,model}`: requests waiting per group.
pub const QUEUE_DEPTH: &str = "im_queue_depth";
/// `im_queue_wait_seconds{kind,model}`: time from submit to dispatch (histogram).
pub const QUEUE_WAIT_SECONDS: &str = "im_queue_wait_seconds";
/// `im_processing_seconds{kind,model}`: upstream time of the answering attempt (histogram).
pub const PROCESSING_SECONDS: &str = "im_processing_seconds";
/// `im_in_flight{lane}`: requests running on a lane.
pub const IN_FLIGHT: &str = "im_in_flight";
/// `im_switches_total{lane,from_kind,to_kind}`: active group changes.
pub const SWITCHES_TOTAL: &str = "im_switches_total";
/// `im_switch_seconds{lane}`: from a model switch to the new model's first answer (includes the load).
pub const SWITCH_SECONDS: &str = "im_switch_seconds";
/// `im_retries_total{kind,model,reason}`: retries scheduled.
pub const RETRIES_TOTAL: &str = "im_retries_total";
/// `im_rejections_total{kind,reason}`: requests refused at admission, by reason (the error
/// type, or `would_expire` for an early refusal).
pub const REJECTIONS_TOTAL: &str = "im_rejections_total";
/// `im_prefix_blocks_total{lane,model,cached}`: prompt blocks (64 characters) of chats sent
/// to a lane, `cached="true"` for those it was sent before (its server likely had them cached).
pub const PREFIX_BLOCKS_TOTAL: &str = "im_prefix_blocks_total";
/// `im_prediction_error_seconds{kind}`: how far a request's predicted start (at admission) was
/// from its first dispatch (histogram of the absolute error; one request in 32 is sampled).
pub const PREDICTION_ERROR_SECONDS: &str = "im_prediction_error_seconds";
/// `im_upstream_errors_total{lane,class}`: failed upstream attempts.
pub const UPSTREAM_ERRORS_TOTAL: &str = "im_upstream_errors_total";
/// `im_breaker_open{lane}`: 1 while the lane's breaker is open.
pub const BREAKER_OPEN: &str = "im_breaker_open";
/// `im_placements_total{lane,outcome}`: groups a lane took up, by what it cost: `resident` (its
/// model was loaded there), `cold_load` (the lane's first model), `eviction` (another model made
/// room).
pub const PLACEMENTS_TOTAL: &str = "im_placements_total";
/// `im_overhead_seconds`: time im adds outside queue wait and upstream time (histogram).
pub const OVERHEAD_SECONDS: &str = "im_overhead_seconds";

/// `im_ws_closed_total{reason}`: WebSocket sessions im closed: `slow` (it did not read its
/// messages), `unauthorized` (no key, or a wrong one).
pub const WS_CLOSED_TOTAL: &str = "im_ws_closed_total";

/// `im_jobs{status}`: durable jobs now `queued` or `running`.
pub const JOBS: &str = "im_jobs";
/// `im_jobs_completed_total{outcome}`: jobs that reached a final state: `succeeded`, `failed`,
/// `cancelled`.
pub const JOBS_COMPLETED_TOTAL: &str = "im_jobs_completed_total";
/// `im_webhook_deliveries_total{outcome}`: webhook delivery attempts: `delivered`, `failed`
/// (retried later), `gone` (410: the endpoint is disabled), `abandoned` (the schedule ran out),
/// `refused` (a private address).
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "im_webhook_deliveries_total";
/// `im_cache_total{model,result}`: lookups in the response cache: `hit` (answered from it) or
/// `miss` (run, and kept when it succeeded).
pub const CACHE_TOTAL: &str = "im_cache_total";
/// `im_cache_bytes`: the size in memory of the answers the response cache keeps.
pub const CACHE_BYTES: &str = "im_cache_bytes";
/// `im_cluster_scheduler`: 1 on the replica that holds the scheduler lease, 0 on the others
/// (distributed mode only).
pub const CLUSTER_SCHEDULER: &str = "im_cluster_scheduler";
/// `im_cluster_epoch`: the scheduler lease's epoch (fencing token) this replica last saw.
pub const CLUSTER_EPOCH: &str = "im_cluster_epoch";
/// `im_forwarded_total{outcome}`: requests a follower forwarded to the scheduler: `answered`,
/// `resent` (sent again after the scheduler failed or was replaced), `unavailable` (no scheduler
/// answered within the failover wait).
pub const FORWARDED_TOTAL: &str = "im_forwarded_total";
/// `im_tenant_requests_total{tenant,outcome}`: units of work by tenant (configured tenants by
/// name, the rest as `other`) and outcome (`ok` or the error type).
pub const TENANT_REQUESTS_TOTAL: &str = "im_tenant_requests_total";
/// `im_tenant_queue_wait_seconds{tenant,class}`: how long a tenant's work waited in the queue,
/// by priority class (`interactive`, `batch`).
pub const TENANT_QUEUE_WAIT_SECONDS: &str = "im_tenant_queue_wait_seconds";
/// `im_tenant_tokens_total{tenant}`: tokens a tenant's work used (as debited from its balance).
pub const TENANT_TOKENS_TOTAL: &str = "im_tenant_tokens_total";
/// `im_tenant_service_seconds{tenant,class}`: histogram of the upstream time each unit of a
/// tenant's work took, by priority class (`interactive`, `batch`); its `_sum` is the service a
/// tenant received, what fair share divides.
pub const TENANT_SERVICE_SECONDS: &str = "im_tenant_service_seconds";
/// `im_tenant_in_flight{tenant}`: a tenant's units of work in im now (waiting or running).
pub const TENANT_IN_FLIGHT: &str = "im_tenant_in_flight";
/// `im_config_reloads_total{outcome}`: configuration reloads (SIGHUP, `POST /admin/reload`):
/// `applied`, or `refused` (an invalid file, or a change only a restart can make).
pub const CONFIG_RELOADS_TOTAL: &str = "im_config_reloads_total";

/// All of them, for checks.
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    QUEUE_DEPTH,
    QUEUE_WAIT_SECONDS,
    PROCESSING_SECONDS,
    IN_FLIGHT,
    SWITCHES_TOTAL,
    SWITCH_SECONDS,
    RETRIES_TOTAL,
    REJECTIONS_TOTAL,
    PREDICTION_ERROR_SECONDS,
    PREFIX_BLOCKS_TOTAL,
    UPSTREAM_ERRORS_TOTAL,
    BREAKER_OPEN,
    PLACEMENTS_TOTAL,
    OVERHEAD_SECONDS,
    WS_CLOSED_TOTAL,
    JOBS,
    JOBS_COMPLETED_TOTAL,
    WEBHOOK_DELIVERIES_TOTAL,
    CACHE_TOTAL,
    CACHE_BYTES,
    CLUSTER_SCHEDULER,
    CLUSTER_EPOCH,
    FORWARDED_TOTAL,
    CONFIG_RELOADS_TOTAL,
    TENANT_REQUESTS_TOTAL,
    TENANT_QUEUE_WAIT_SECONDS,
    TENANT_TOKENS_TOTAL,
    TENANT_SERVICE_SECONDS,
    TENANT_IN_FLIGHT,
];
