"""OPC UA server for SCADA clients (asyncua)."""
