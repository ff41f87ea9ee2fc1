"""Floor 3, learning: from cell statistics to snapshots, reports and the publish cycle."""
