"""Training: targets and losses, optimizer and schedules, the train loop."""
