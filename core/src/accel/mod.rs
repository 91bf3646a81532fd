//! accel placeholder
