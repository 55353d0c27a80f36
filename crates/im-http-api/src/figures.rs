//! im's figures as response headers: the queue wait, the processing time, the attempts and
//! im's own overhead, each request's overhead also recorded in its histogram.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use im_service::Figures;

use crate::state::{AppState, Arrived};

/// The figures' names, made once (a `&str` name is parsed at every insert).
const QUEUE_WAIT: HeaderName = HeaderName::from_static("x-queue-wait-ms");
const PROCESSING: HeaderName = HeaderName::from_static("x-processing-ms");
const ATTEMPTS: HeaderName = HeaderName::from_static("x-attempts");
const OVERHEAD: HeaderName = HeaderName::from_static("x-im-overhead-ms");

/// Set the figures headers (`X-Request-Id` is set by the middleware) and record the overhead.
pub fn figure_headers(st: &AppState, headers: &mut HeaderMap, m: &Figures, arrived: Arrived) {
    let total = arrived.at.elapsed();
    let overhead = total.saturating_sub(m.queue_wait + m.processing);
    st.service.engine().metrics().http().overhead(overhead);
    let pairs = [
        (QUEUE_WAIT, millis(m.queue_wait)),
        (PROCESSING, millis(m.processing)),
        (ATTEMPTS, count(m.attempts)),
        (OVERHEAD, millis(overhead)),
    ];
    for (k, v) in pairs {
        headers.insert(k, v);
    }
}

/// `d` in milliseconds with three decimals (`12.345`), rounded to the microsecond; integer
/// formatting (`itoa`), no `format!` and no float, and 64-bit arithmetic for any duration under
/// half a million years (128-bit division is a library call). Written on the stack and copied
/// once: a header value made from a `Vec` whose length is not its capacity costs a second
/// allocation.
fn millis(d: Duration) -> HeaderValue {
    match u64::try_from(d.as_micros()) {
        Ok(us) if us < u64::MAX - 1 => {
            let us = us + u64::from(d.subsec_nanos() % 1000 >= 500);
            decimal_millis(us / 1000, us % 1000)
        }
        _ => {
            let us = (d.as_nanos() + 500) / 1000;
            decimal_millis(us / 1000, (us % 1000) as u64)
        }
    }
}

/// `whole.fraction` with the fraction's three digits (under 1000), zeros kept.
fn decimal_millis(whole: impl itoa::Integer, fraction: u64) -> HeaderValue {
    let mut whole_digits = itoa::Buffer::new();
    let whole = whole_digits.format(whole).as_bytes();
    // The fraction's three digits, zeros kept: 1000 + it, less the leading 1.
    let mut fraction_digits = itoa::Buffer::new();
    let fraction = &fraction_digits.format(1000 + fraction).as_bytes()[1..];
    // u128's 39 digits, the point and three decimals.
    let mut value = [0u8; 43];
    let n = whole.len();
    value[..n].copy_from_slice(whole);
    value[n] = b'.';
    value[n + 1..n + 4].copy_from_slice(fraction);
    HeaderValue::from_bytes(&value[..n + 4]).unwrap_or(HeaderValue::from_static("0.000"))
}

/// A count as a header value: the usual few without an allocation.
fn count(n: u32) -> HeaderValue {
    const SMALL: [&str; 4] = ["0", "1", "2", "3"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn figures_read_in_milliseconds_with_three_decimals() {
        use super::millis;
        assert_eq!(millis(Duration::ZERO), "0.000");
        assert_eq!(millis(Duration::from_nanos(1_234_500)), "1.235");
        assert_eq!(millis(Duration::from_nanos(1_234_499)), "1.234");
        assert_eq!(millis(Duration::from_secs(86_400)), "86400000.000");
        assert_eq!(millis(Duration::from_micros(12_345_678)), "12345.678");
        assert_eq!(millis(Duration::from_micros(999_999)), "999.999");
        assert_eq!(millis(Duration::from_nanos(999_999_600)), "1000.000");
        // Rounded to the microsecond, up to the largest duration.
        assert_eq!(millis(Duration::MAX), "18446744073709551616000.000");
    }

    #[test]
    fn counts_read_as_decimal_numbers() {
        use super::count;
        for n in [0, 1, 2, 3, 4, 10, 12345, u32::MAX] {
            assert_eq!(count(n), n.to_string().as_str());
        }
    }
}
