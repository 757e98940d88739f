"""One-pass evaluation of trackers: sequence readers, runner, OPE metrics, reports and plots."""
