"""The dispatcher service: journeys with durable delays, email over SMTP."""
