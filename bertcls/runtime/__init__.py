"""What every run stands on: the parallel strategy, paths under the output root, atomic files, locks, interrupts,
logs, secret masking, errors, devices and precision, memory readings."""
