"""The stager service: customer state and lifecycle stage, time-driven transitions, triggers."""
