"""The CEP core: event model, per-user Redis state and its Lua scripts, timers, workers."""
