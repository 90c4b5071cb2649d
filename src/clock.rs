//! The wall clock, for the records of adapters and the loop's own pace; never for decisions
//! (`plan` takes `now` as an argument, and the simulator gives its virtual one).

use crate::control::time::Time;

/// Now, from the system clock.
pub fn wall_clock() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time::from_millis(d.as_millis() as u64)
}
