"""`healthgate simulate`: a policy tried on a month of traffic through healthgate's own
intake, signals and dispatch, with a simulated clock and provider."""
