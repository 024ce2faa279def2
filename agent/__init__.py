"""dedgeai.agent"""
