"""Action sinks: deliver coupon, points, tag, message and webhook actions."""
