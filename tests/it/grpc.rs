//! gRPC through steer with tonic on both sides: unary and server-streaming,
//! status and trailers intact, over h2c from client to upstream.

use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

async fn client(steer: &Steer) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(steer.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn grpc_steer() -> (steer::demo::Deployment, Steer) {
    let blue = upstream("blue").await;
    let body = format!(
        "{}[[routes]]\nname = \"grpc\"\nheader_regex = {{ \"content-type\" = \"^application/grpc\" }}\nupstream = \"blue\"\n",
        upstream_toml("blue", blue.addr(), "h2c")
    );
    let steer = Steer::start_ready(&body).await;
    (blue, steer)
}

#[tokio::test]
async fn grpc_unary_call_passes_with_status() {
    let (blue, steer) = grpc_steer().await;
    let mut c = client(&steer).await;
    let resp = c
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(resp.get_ref().status, ServingStatus::Serving as i32);
    assert!(blue.requests() >= 1);
}

#[tokio::test]
async fn grpc_error_status_in_trailers_reaches_the_client() {
    let (_blue, steer) = grpc_steer().await;
    let mut c = client(&steer).await;
    let err = c
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn grpc_server_stream_delivers_updates() {
    let (blue, steer) = grpc_steer().await;
    let mut c = client(&steer).await;
    let mut stream = c
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // The stream is in flight on the endpoint; it keeps flowing even though
    // the endpoint now fails its readiness checks.
    blue.set_ready(false);
    let next = stream.message().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn a_rate_limited_grpc_call_says_when_to_retry() {
    // gRFC A6: grpc-retry-pushback-ms tells a client with a retry policy
    // when to come back, as Retry-After does for HTTP clients.
    let blue = upstream("blue").await;
    let body = format!(
        "{}[[routes]]\nname = \"grpc\"\nupstream = \"blue\"\nrate_limit = {{ requests = 1, per = \"1m\", burst = 1 }}\n",
        upstream_toml("blue", blue.addr(), "h2c")
    );
    let steer = Steer::start_ready(&body).await;
    let mut c = client(&steer).await;
    let check = || HealthCheckRequest {
        service: String::new(),
    };
    c.check(check()).await.unwrap();
    let err = c.check(check()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let meta = err.metadata();
    let secs: u64 = meta
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let pushback = meta
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(pushback, (secs * 1000).to_string(), "{meta:?}");
}

#[tokio::test]
async fn steers_own_answers_reach_grpc_clients_as_grpc_statuses() {
    let blue = upstream("blue").await;
    let body = format!(
        "{}[[routes]]\nname = \"other\"\npath_prefix = \"/zitadel.\"\nupstream = \"blue\"\n\n\
         [[routes]]\nname = \"down\"\npath_prefix = \"/grpc.health.v1.Health/Watch\"\nupstream = \"gone\"\n\n\
         [upstreams.gone]\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n",
        upstream_toml("blue", blue.addr(), "h2c"),
        closed_port()
    );
    let steer = Steer::start(&body).await;
    let admin = steer.admin();
    eventually("the dead upstream is probed down", || async {
        states(&admin, "gone").await == ["unhealthy"]
    })
    .await;
    let mut c = client(&steer).await;
    // No route: UNIMPLEMENTED, with steer's reason.
    let err = c
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(
        err.message().contains("no route for this request"),
        "{err:?}"
    );
    // No healthy endpoint: UNAVAILABLE, which gRPC clients retry.
    let err = c
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("no healthy endpoint in upstream(s) gone"),
        "{err:?}"
    );
    // The metrics count what the answers stand for.
    let series = "steer_requests_total{code=\"503\",route=\"down\",upstream=\"\"}";
    assert_eq!(metric(&admin, series).await, 1.0);
}
