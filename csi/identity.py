"""CSI Identity service: who the plugin is, which services it offers, whether it is ready."""

from __future__ import annotations

from collections.abc import Callable

from eddy import __version__
from eddy.base.pb import csi_pb2, csi_pb2_grpc
from eddy.base.rpc import Servicer

Service = csi_pb2.PluginCapability.Service


class IdentityService(Servicer, csi_pb2_grpc.IdentityServicer):
    """CSI Identity: the driver's name and version, its capabilities, and readiness (Probe).

    Served by every mode of `eddy serve`; `controller` says whether the Controller service is
    offered, `ready` is asked at each Probe."""

    def __init__(self, driver_name: str, controller: bool,
                 ready: Callable[[], bool] = lambda: True):
        self.driver_name = driver_name
        self.controller = controller
        self._ready = ready

    def GetPluginInfo(self, request):
        return csi_pb2.GetPluginInfoResponse(name=self.driver_name, vendor_version=__version__)

    def GetPluginCapabilities(self, request):
        # Topology (VOLUME_ACCESSIBILITY_CONSTRAINTS) is not offered: any node can serve any
        # dataset, so there is nothing to constrain.
        caps = []
        if self.controller:
            caps.append(csi_pb2.PluginCapability(
                service=Service(type=Service.CONTROLLER_SERVICE)))
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    def Probe(self, request):
        return csi_pb2.ProbeResponse(ready={"value": self._ready()})
