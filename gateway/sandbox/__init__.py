"""The demo upstream: an in-process stand-in for SMSGate's 3rdparty API that answers made-up data."""
