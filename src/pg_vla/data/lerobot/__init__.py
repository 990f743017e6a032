"""LeRobot dataset folders (formats v3.0 and v2.1; cameras as mp4 video or images in the parquet).

LeRobotConfig          what to read (folders and weights, the feature mapping, windows, ...)
make_lerobot_loader    -> (DataLoader, {folder name: DatasetStatistics}), the RLDS loader's batch layout
LeRobotWriter          writes folders in the format (`writer`; the RLDS converter uses it)
"""

from pg_vla.data.lerobot.config import LeRobotConfig, LeRobotDataError
from pg_vla.data.lerobot.loader import make_lerobot_loader
from pg_vla.data.lerobot.writer import LeRobotWriter

__all__ = ["LeRobotConfig", "LeRobotDataError", "LeRobotWriter", "make_lerobot_loader"]
