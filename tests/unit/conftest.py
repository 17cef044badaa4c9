"""Hypothesis without its timing checks: the build machines are shared and noisy, and a
property test must fail on a wrong answer, never on a slow example (CI once failed with
"input generation is slow" on a busy machine)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "heartbeat", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("heartbeat")
