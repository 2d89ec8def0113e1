//! Shared helpers for the criterion benches (kept empty until a second bench needs one).
