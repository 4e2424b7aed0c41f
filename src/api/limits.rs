//! A read deadline on every request body: a client that sends its body too slowly gets `408` and is
//! let go, whichever handler reads the body (webhooks, the API's JSON commands, keys).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage;
use futures::Stream;

use super::AppState;

/// The body stream of a request, ending with a `TimedOut` error once the deadline has passed.
struct Deadline {
    inner: Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.expired = true;
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "the body did not arrive in time");
            return Poll::Ready(Some(Err(PayloadError::Io(e))));
        }
        Poll::Pending
    }
}

/// Whether a body read failed because of [`body_deadline`].
pub(crate) fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The middleware: the whole body must arrive within `server.body_timeout_ms` of the request head.
pub(crate) async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let millis = req
        .app_data::<web::Data<AppState>>()
        .map_or(10_000, |s| s.config.server.body_timeout_ms);
    let inner = req.take_payload();
    let stream = Deadline {
        inner,
        sleep: Box::pin(tokio::time::sleep(Duration::from_millis(millis))),
        expired: false,
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(stream),
    });
    next.call(req).await
}
