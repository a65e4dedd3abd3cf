"""ecg-monitor daemon: MQTT heartbeat windows in, ONNX Runtime scores, alerts out.

Importing this package never imports torch.
"""

__version__ = "0.1.0"
