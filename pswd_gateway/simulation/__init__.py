"""The site's digital twin: real Modbus TCP and Redfish servers with simple physics behind them."""
