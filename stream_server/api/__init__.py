"""Compatible HTTP / WebSocket APIs of other TTS services, one module family per API."""
