"""IEC 61850 for grid operators (libiec61850 through pyiec61850-ng)."""
