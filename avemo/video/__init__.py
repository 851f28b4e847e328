"""Video front end (raw files → front ends → cache): decoding, frame timing, faces, crops."""

from avemo.video.errors import VideoError, VideoWarning

__all__ = ["VideoError", "VideoWarning"]
