"""What the driver remembers across restarts: the controller's volume records (volumes) and the
node's staged volumes and their targets (staging), each written crash-safe under --state-dir."""
