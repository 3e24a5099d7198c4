"""Departmental sharing (数据共享, issue 11): grants and policy, targets, delivery, audit."""
