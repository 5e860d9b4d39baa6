"""The CSI driver's Kubernetes side: the API client, pvc:// resolution, ConfigMap volume records.

Only the controller talks to the Kubernetes API; node code never imports this package, and
nothing here imports grpc (import-linter checks both).
"""
