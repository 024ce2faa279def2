"""dedgeai.scheduler"""
