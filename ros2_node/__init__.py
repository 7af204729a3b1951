"""ROS 2: the perception node, message conversions, and bag tools."""
