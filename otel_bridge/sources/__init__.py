"""Sources: one module per wire format, validated and translated into the lifecycle vocabulary."""
