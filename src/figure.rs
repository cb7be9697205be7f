//! Figures: the doubles a scheduler reports for a host (CPU, memory and
//! disk percentages), and the one rule every view of them follows.
//!
//! A real dfdaemon can send any double: the Rust client divides by a total
//! that may be zero (NaN), other clients send +-Inf. The rule:
//!
//! - a **figure** is a finite double; `-0.0` is the figure `0.0`;
//! - anything else (NaN, +Inf, -Inf) is **no figure**: GraphQL and REST show
//!   it as `null` ("the scheduler sent no finite figure"), an order puts it
//!   after every figure in both directions, and nothing is computed from it;
//! - a host whose sub-message (`cpu`, `memory`, `disk`) is unset has no
//!   figure either, and sorts with the hosts that sent a non-finite one.
//!
//! Depends on nothing; used by `graphql` (fields, order, cursors).

use std::cmp::Ordering;

/// `value` as a figure: `None` when it is not finite; `-0.0` becomes `0.0`
/// so that equal figures have equal bits (cursors carry the bits).
pub fn figure(value: f64) -> Option<f64> {
    if !value.is_finite() {
        return None;
    }
    // -0.0 + 0.0 is +0.0; every other finite value is unchanged.
    Some(value + 0.0)
}

/// The order of two (possibly absent) figures: figures ascending, or
/// descending when `descending`; no figure after every figure either way.
pub fn cmp_figures(a: Option<f64>, b: Option<f64>, descending: bool) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => {
            let ordering = a.total_cmp(&b);
            if descending {
                ordering.reverse()
            } else {
                ordering
            }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finite_doubles_are_figures_and_negative_zero_is_zero() {
        assert_eq!(figure(f64::NAN), None);
        assert_eq!(figure(f64::INFINITY), None);
        assert_eq!(figure(f64::NEG_INFINITY), None);
        assert_eq!(figure(98.36355994880891), Some(98.36355994880891));
        let zero = figure(-0.0).unwrap();
        assert_eq!(zero.to_bits(), 0.0f64.to_bits());
        assert_eq!(figure(f64::MIN_POSITIVE), Some(f64::MIN_POSITIVE));
    }

    #[test]
    fn no_figure_sorts_last_in_both_directions() {
        let mut values = vec![None, Some(3.0), Some(-1.0), None, Some(100.0)];
        values.sort_by(|a, b| cmp_figures(*a, *b, false));
        assert_eq!(values, [Some(-1.0), Some(3.0), Some(100.0), None, None]);
        values.sort_by(|a, b| cmp_figures(*a, *b, true));
        assert_eq!(values, [Some(100.0), Some(3.0), Some(-1.0), None, None]);
    }
}
